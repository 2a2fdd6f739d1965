"""The IPython side: the extension, running magic cells on the kernel loop, option parsing, the magics."""
