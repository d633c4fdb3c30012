"""`runbot doctor`: check a deployment before GitHub finds the problem for you.

Each check returns rows; a failing row carries the fix, because an operator reading
"database: FAIL" at 2 a.m. needs the next step, not a traceback. Checks only read: doctor never
migrates, never creates the database and never writes to GitHub.
"""
