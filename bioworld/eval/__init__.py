"""bioworld.eval"""
