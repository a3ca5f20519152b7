"""MONAI Label for the MGCC segmentation bundle: the launcher (`mgcc label`, main environment), the server app
(`app/main.py`) and a client (`client.py`, MONAI Label's own), the last two run in the MONAI Label environment.
The wheel carries this folder as `mgcc.monailabel`."""
