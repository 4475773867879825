package main

import (
	"context"
	"errors"
)

var errTODO = errors.New("not measured yet")

func sectionWS(context.Context, options, *env, *report) error    { return errTODO }
func sectionJobs(context.Context, options, *env, *report) error  { return errTODO }
func sectionSched(context.Context, options, *env, *report) error { return errTODO }
func sectionFleet(context.Context, options, *env, *report) error { return errTODO }
