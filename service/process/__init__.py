"""The serving process: the state every transport shares (state.py), bundle reloads (reload.py), and the
runtime that runs HTTP and gRPC on one event loop, handles signals and drains (runtime.py). Only the
command line imports the runtime."""
