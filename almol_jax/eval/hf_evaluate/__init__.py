"""Directory of the Hugging Face ``evaluate`` module (``evaluate.load`` this folder's path).

A package only so that wheels ship ``hf_evaluate.py``; nothing is imported from here.
"""
