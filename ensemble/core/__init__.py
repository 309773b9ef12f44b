"""The recipe and the vocabulary it names (entries, tasks, channels, frontends, waveform transforms, encoder
sets), and the utilities every layer uses (errors, atomic writes, threads, weights folder); no torch at
import.
"""
