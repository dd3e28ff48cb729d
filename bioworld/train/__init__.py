"""bioworld.train"""
