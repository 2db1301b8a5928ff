"""soulray: regenerate SoulChat-style empathetic counseling corpora at scale on Ray."""

__version__ = "0.1.0"
