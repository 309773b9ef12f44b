"""Member kinds (the protocol, the registry, the image and functionals kinds) and what they train and predict
with: backbones, AudioSet CNNs, functionals and encoder sets, the training loop, checkpoints, pseudo-labels.
"""
