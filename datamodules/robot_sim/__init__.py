"""A real closed-loop simulation that runs here: PyBullet (``pybullet_data``'s Franka Panda, table, cube, block and
tray; headless TinyRenderer camera), three language-conditioned tasks, scripted experts and a writer that records
their demonstrations in the LIBERO HDF5 layout (labelled synthetic). ``tasks.cronusvla_eval`` runs a policy
closed-loop in it.

- :mod:`.env`: :class:`TabletopEnv`, :data:`TASKS`
- :mod:`.experts`: :class:`ScriptedExpert`
- :mod:`.record`: :func:`write_libero_demos`, :func:`record_demos`
"""
from .env import TASKS, TabletopEnv, TaskSpec
from .experts import ScriptedExpert
from .record import record_demos, write_libero_demos

__all__ = ["TASKS", "ScriptedExpert", "TabletopEnv", "TaskSpec", "record_demos", "write_libero_demos"]
