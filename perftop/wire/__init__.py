"""What the agent and the viewer agree on: the frame protocol, the sketch and its windows, socket paths.

Standard library only: the agent imports this inside the monitored app.
"""
