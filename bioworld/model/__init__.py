"""bioworld.model"""
