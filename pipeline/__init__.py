"""Fast feed-forward style transfer with instance normalization (Ulyanov et al. 2017)."""
__version__ = "0.1.0"
