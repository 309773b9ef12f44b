"""Public corpora turned into competition folders (``ens data <corpus>``)."""
