"""NP-hardness reductions and adversarial instance families, with certificates."""
