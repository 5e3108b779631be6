"""A model family from outside modelfoundry: a temporal convolutional network (tcnzoo.family)."""
