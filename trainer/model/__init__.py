"""The user-node scorer: the network, its layers, the fused training kernel and the row optimizer."""
