"""URLs of the test project."""

from django.urls import path

from . import views

urlpatterns = [
    path("payments", views.payments),
    path("required", views.required),
    path("exempt", views.exempt),
    path("short", views.short_retention),
    path("put-too", views.put_too),
    path("classy", views.Classy.as_view()),
    path("stream", views.stream),
    path("file", views.file),
    path("boom", views.boom),
    path("status/<int:code>", views.status),
    path("upload", views.upload),
    path("guarded", views.guarded),
]
