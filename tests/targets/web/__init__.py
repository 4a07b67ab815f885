"""Real web apps (Flask, Django, FastAPI, Bottle) for the zero-code request-timing tests."""
