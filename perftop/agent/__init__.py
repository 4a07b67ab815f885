"""The in-app agent: runs inside the monitored process. Standard library only; never raises into the app."""
