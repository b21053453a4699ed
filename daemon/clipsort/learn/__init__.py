"""Learn, at the edge: corrections people make, fine-tuning, evaluation and the demonstration model."""
