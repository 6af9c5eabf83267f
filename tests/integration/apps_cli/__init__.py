"""Small apps the CLI tests run in real `stride` subprocesses."""
