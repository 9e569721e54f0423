"""Hard parameter sharing: the student derived from the dynamic teacher."""

from gpd.sharing.student_view import StudentView

__all__ = ["StudentView"]
