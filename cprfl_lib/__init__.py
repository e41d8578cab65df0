"""cprfl_lib: the CPRFL model, losses, metrics, data and training engine.

CPRFL: Category-Prompt Refined Feature Learning for Long-Tailed Multi-Label Image
Classification (Yan et al., ACM MM 2024). See README.md and docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
