"""The source of a pull request's head commit, unpacked for its stack to read (issue 19)."""
