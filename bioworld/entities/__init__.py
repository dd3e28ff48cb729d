"""bioworld.entities"""
