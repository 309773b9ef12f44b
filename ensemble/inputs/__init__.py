"""Audio in: reading clips, rendering them as feature images or a frontend's log-mel (with the feature cache),
augmentation, the per-clip vector cache, and drawing feature images.
"""
