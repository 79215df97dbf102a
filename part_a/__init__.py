"""Part A: a fully parameterised CNN trained from scratch."""
