"""bioworld.query"""
