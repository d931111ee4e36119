"""The `narrator` command line (`cli/main.py`) and the demo it runs (`cli/demo.py`): the user's front.

A front over the floors below it (the steps in `components/`, the models, the library in `narrator/`) and the
entry to the other fronts (the Kubeflow pipelines it compiles and runs, the service it starts); nothing imports it.
"""
