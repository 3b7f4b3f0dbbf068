"""Teacher: writes candidate instructions (self-instruct style) and answers them."""
