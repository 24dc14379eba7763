"""Baselines a learnt tree model must beat: popularity, Item-CF, YouTube product-DNN."""
