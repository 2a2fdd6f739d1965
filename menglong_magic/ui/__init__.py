"""Views of a run's event stream: the state fold, its HTML, the text view, the live widgets, the front-end choice.

May import IPython and ipywidgets; never imported by the core (agent, maps, models, tools, events).
"""
