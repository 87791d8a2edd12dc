"""The runtime: app configuration, deploy artifacts, and (next) the agent that runs machines."""
