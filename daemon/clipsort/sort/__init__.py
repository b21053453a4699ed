"""Sort: the batch pipeline that turns ready files into placed files, for the daemon and the one-shot sort."""
