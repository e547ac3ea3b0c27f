"""The ShapesWorld demo: a miniature world whose truth is known, its trained models, and the quality report."""
