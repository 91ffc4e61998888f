"""The command line: `cascade` (cli/main.py) and `cascade-submit` (cli/submit.py), thin shells over the library."""
