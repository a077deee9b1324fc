from django.urls import path

from benchmarks import views

urlpatterns = [
    path("hello/", views.hello),
    path("sleep/", views.sleep),
    path("big/", views.big),
    path("sink/", views.sink),
]
