"""Text suite: all-MiniLM-L6-v2 body, real labelled corpora from packages."""
