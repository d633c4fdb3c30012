"""The warm pool: instances kept applied ahead of PRs, handed to the next PR that opens."""
