"""Importers of weights trained by other RefineDet implementations."""
