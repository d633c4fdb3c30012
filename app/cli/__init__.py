"""The `runbot` command line (`main.py` lists every command)."""
