"""Money: hourly rates read from a stack's outputs, and the arithmetic of spend over time.

Pure (no I/O): the ledger writer (`app.db.ledger`) records rate spans, this room adds them up.
"""
