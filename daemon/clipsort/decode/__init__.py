"""Files to pixels: reading, format checks, decoding within limits, the decoding processes."""
