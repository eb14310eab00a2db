"""The quiesce-cut-resume protocol as an explicit state machine over the ports."""
