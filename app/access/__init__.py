"""Who may do what: GitHub roles in one order, and the pure rule for runbot's actions."""
