"""The CNI plugin (cnm-cni): standard library only, see main.py."""
