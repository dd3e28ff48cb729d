"""bioworld.report"""
