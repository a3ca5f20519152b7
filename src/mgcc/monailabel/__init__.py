"""MONAI Label for the MGCC segmentation bundle: the launcher (`mgcc label`, run in the main environment) and a
client (`client.py`, MONAI Label's own `MONAILabelClient`, run as a script in the MONAI Label environment).

The MONAI Label app itself (`app/main.py`, MONAI Label's `monaibundle` sample app with our checks) and the set-up of
its environment (`setup_env.sh`, `requirements.in/.txt`) live in `apps/monailabel/` of the checkout; the wheel
carries that folder as `mgcc._monailabel_app` (see `launcher.APP_DIR`)."""
