"""Blending finished members' out-of-fold and test tables, and the blend methods."""
