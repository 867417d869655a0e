"""§6.1: what the net learned: features of the last hidden layer, nearest neighbours, figures."""
