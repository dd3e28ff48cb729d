"""bioworld.actions"""
