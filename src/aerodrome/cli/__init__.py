"""`aero`: the command line. One module per resource, one output helper."""
